from django.apps import AppConfig


class StaffConfig(AppConfig):
    """The staff console: /staff/ (overview, accounts) and the /review/ queue.

    It only reads across apps (``staff.selectors``) and calls their services; nothing depends
    on it.
    """

    name = "staff"
