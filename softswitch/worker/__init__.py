"""The media worker process: the only code that loads PJSUA2 (besides the tests' softphone).

``process`` is the library thread's loop, ``callbacks`` what the library calls
into Python (and on which thread), ``pjsip`` the endpoint profile shared with
the tests' softphone, ``invite`` what is read off an INVITE, ``engine`` what
the installed library holds, ``settings`` the worker's settings (the control
process imports those without loading the library).
"""
