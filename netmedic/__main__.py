from netmedic.cli import main

raise SystemExit(main())
