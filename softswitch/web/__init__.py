"""The HTTP side of the control process: JSON API, intake and reports, agents' console, supervisor view, agency page.

``app`` builds the aiohttp application; ``sessions`` holds the login, cookie,
CSRF and error handling every page shares; ``credentials`` the password and
SIP HA1 hashing; ``console``, ``agency`` and ``intake`` the pages and APIs.
"""
