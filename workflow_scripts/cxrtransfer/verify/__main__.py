"""python -m cxrtransfer.verify: check the products on disk (see cxrtransfer.verify.command)."""

from cxrtransfer.verify.command import main

raise SystemExit(main())
