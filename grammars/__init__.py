"""Package data: growdsl.lark, the grammar of the schedule language (shipped as growdsl.grammars)."""
