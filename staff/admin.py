"""The admin as the platform's own: its name in the header and title, one Accounts section.

Loaded after every other app's admin (``staff`` is last in INSTALLED_APPS), so it can take
away what they registered.
"""

from allauth.account.models import EmailAddress, EmailConfirmation
from django.conf import settings
from django.contrib import admin
from django.utils.translation import gettext_lazy as _

admin.site.site_header = settings.PLATFORM_NAME
admin.site.site_title = settings.PLATFORM_NAME
admin.site.index_title = _("Platform administration")
# Staff start at the console, which links here.
admin.site.site_url = "/staff/"

# allauth's email addresses appeared as a second "Accounts" section. The account's address is
# edited on the account itself (``accounts.services.account_add_email`` keeps allauth's table
# in step); editing allauth's rows directly would let the two disagree.
for model in (EmailAddress, EmailConfirmation):
    if admin.site.is_registered(model):
        admin.site.unregister(model)
