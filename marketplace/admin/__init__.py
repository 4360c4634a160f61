"""Django admin: the operators' console, one module per domain area.

Lists stay fast (`list_select_related`, autocomplete widgets, no DISTINCT-scanning filters
on the big tables, no full-table counts). Every write that the domain owns goes through a
service: organizations and memberships, nodes and offers are created and changed with their
services, suspensions, compliance verification, pausing, cancelling and refunds are actions
that call services, and a job's status is never editable (only `marketplace.job_states`
writes it). Importing the package registers every area's pages.
"""

from django.contrib import admin

from . import accounts, audit, jobs, nodes, offers, payments, trust  # noqa: F401  (each registers its pages)
from .common import money  # noqa: F401  (the admin's display rule, checked by tests/test_money.py)

admin.site.site_header = "ComputeMesh administration"
admin.site.site_title = "ComputeMesh admin"
admin.site.index_title = "Run the network"
