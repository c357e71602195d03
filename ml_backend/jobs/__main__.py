from ml_backend.jobs.cli import main

raise SystemExit(main())
