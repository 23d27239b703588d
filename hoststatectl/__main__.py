from hoststatectl.main import main

raise SystemExit(main())
