"""The simulated WeCom: rules in :mod:`~simulator.wecom.world` and its parts, HTTP in ``api``
(``/cgi-bin``) and ``control`` (``/sim``)."""
