"""python -m cxrtransfer.verify: check the products on disk (see cxrtransfer.verify.products)."""

from cxrtransfer.verify.products import main

raise SystemExit(main())
