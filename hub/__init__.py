"""The composition of the services: ``wxkf up`` (:mod:`hub.up`) and the ``wxkf`` command (:mod:`hub.cli`).

Everything below this package (``gateway``, ``token_service``, ``manager``, ``puppets``) is a service
that never imports another service's composition; the shared base (``wxkf``) imports no service.
"""
