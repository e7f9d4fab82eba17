from mft_trainer.cli import main

raise SystemExit(main())
