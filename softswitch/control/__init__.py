"""The control process: calls and their IVR, routing, the agents' desk, the SIP front and the child processes.

``process`` is the service itself (``Softswitch``, ``serve``), ``calls`` the
IVR's channel over the control protocol, ``routing`` who may call what,
``desk`` the agents' side of live calls, ``sipfront`` Kamailio's config and
JSON-RPC, ``processes`` the supervision of Kamailio and the media workers,
``capacity`` how many workers of how many calls.
"""
