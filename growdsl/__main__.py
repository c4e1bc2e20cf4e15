from growdsl.cli import main

raise SystemExit(main())
