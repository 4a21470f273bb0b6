"""The hotline's rules, in one place: imported by the IVR, the web and the store, importing none of them.

Case statuses and their order, the duplicate rule's window, tracking codes,
national IDs, Persian digits and Jalali dates, office hours, the ACD.
"""
