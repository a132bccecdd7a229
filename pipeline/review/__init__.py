"""The review page over the prediction table (`python -m pipeline review`) and the export of its
corrections as a dataset (`python -m pipeline export-reviews`): docs/review.md.

queries.py reads the prediction table (filters, pages, the overview) and store.py writes the
separate reviews table; roots.py keeps every image read inside the --source roots and makes the
thumbnails; app.py is the Starlette app over templates/, csrf.py guards its POSTs, serve.py runs
it with uvicorn; export.py writes the reviewed images as dataset folders. Only app.py and serve.py
need the web packages (requirements.txt, the `review` extra); the export runs without them.
"""
