from localizer.cli import main

raise SystemExit(main())
