"""Diffusion Zoo's app: `python app.py` serves it on http://127.0.0.1:7860 (the Space runs this file too).

The app is the installed package `zoo.app` (one module per tab); this file only starts it, so
`from zoo.app import build_app, launch` works anywhere after `pip install`.
"""

from zoo.app import main

if __name__ == "__main__":
    main()
