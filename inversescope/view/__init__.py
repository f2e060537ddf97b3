"""The browser view of a workdir's runs: ``inversescope view WORKDIR`` serves it, or in Python

    from inversescope.view import create_app
    app = create_app("runs")          # a FastAPI app; serve it with uvicorn

Pages: the runs, a run's FCR and refusal over its site grid, a site's samples, a feature across
layers, the sampling methods side by side, a search over samples, and inverting a typed prompt.
"""

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from inversescope.view.app import create_app

        return create_app
    raise AttributeError(f"module 'inversescope.view' has no attribute {name!r}")
