"""lm-eval 0.4's prompts for the shipped tasks, as Python functions rather than the Jinja templates of
lm-eval's own YAMLs: the same strings, but lm-eval compiles a Jinja template anew for every
document (~1 ms each: over a minute for the paper's suite at every evaluation)."""


def arc_text(doc):  # "Question: {{question}}\nAnswer:"
    return f"Question: {doc['question']}\nAnswer:"


def arc_choices(doc):  # "{{choices.text}}"
    return doc["choices"]["text"]


def arc_target(doc):  # "{{choices.label.index(answerKey)}}"
    return doc["choices"]["label"].index(doc["answerKey"])


def piqa_text(doc):  # "Question: {{goal}}\nAnswer:"
    return f"Question: {doc['goal']}\nAnswer:"


def piqa_choices(doc):  # "{{[sol1, sol2]}}"
    return [doc["sol1"], doc["sol2"]]


def sciq_text(doc):  # "{{support.lstrip()}}\nQuestion: {{question}}\nAnswer:"
    return f"{doc['support'].lstrip()}\nQuestion: {doc['question']}\nAnswer:"


def sciq_choices(doc):  # "{{[distractor1, distractor2, distractor3, correct_answer]}}"
    return [doc["distractor1"], doc["distractor2"], doc["distractor3"], doc["correct_answer"]]


def lambada_text(doc):  # "{{text.split(' ')[:-1]|join(' ')}}"
    return " ".join(doc["text"].split(" ")[:-1])


def lambada_target(doc):  # "{{' '+text.split(' ')[-1]}}"
    return " " + doc["text"].split(" ")[-1]


def heldout_target(doc):
    return doc["text"]


# Winogrande's partial scoring, as lm-eval's preprocess_winogrande: the choices are the sentence up
# to the blank with each option filled in; the target is what follows the blank.
def winogrande_text(doc):
    return {"1": 0, "2": 1}[doc["answer"]]


def winogrande_target(doc):
    return doc["sentence"][doc["sentence"].index("_") + 1 :].strip()


def winogrande_choices(doc):
    blank = doc["sentence"].index("_")
    return [doc["sentence"][:blank] + option for option in (doc["option1"], doc["option2"])]
