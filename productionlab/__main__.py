from productionlab.cli import main

raise SystemExit(main())
