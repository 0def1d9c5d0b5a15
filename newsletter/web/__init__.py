"""The web side: ``newsletter serve`` (unsubscribe, archive) and ``newsletter preview``.

``app`` is the served application; ``unsubscribe`` and ``archive`` its pages' logic, ``feed``
the archive's Atom feed; ``security`` the middleware both servers share; ``server`` how uvicorn
runs it; ``preview`` the live preview of an issue being written. Pages are in ``pages/``.
"""
