from hoststated.cli import main

raise SystemExit(main())
