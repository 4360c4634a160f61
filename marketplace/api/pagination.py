from django.core.paginator import InvalidPage
from django.db.models import QuerySet
from rest_framework.exceptions import NotFound
from rest_framework.pagination import PageNumberPagination


class StandardPagination(PageNumberPagination):
    """`{count, next, previous, results}`; `page_size` up to 100."""

    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100


class IdSubqueryPagination(StandardPagination):
    """Pages a large table with one statement in two steps: the page's ids come from the
    filtered, ordered table alone (its indexes), then only those rows are joined to their
    relations. DESIGN.md measured this at 5.6 ms against 17 ms for join-sort-limit on 100k
    offers. Queries: one COUNT, one page."""

    def paginate_queryset(self, queryset: QuerySet, request, view=None):
        self.request = request
        page_size = self.get_page_size(request)
        if not page_size:
            return None
        related = queryset.query.select_related
        lean = queryset.select_related(None)
        paginator = self.django_paginator_class(lean, page_size)
        page_number = self.get_page_number(request, paginator)
        try:
            self.page = paginator.page(page_number)
        except InvalidPage as exc:
            raise NotFound(self.invalid_page_message.format(
                page_number=page_number, message=str(exc))) from None
        order = queryset.query.order_by or queryset.model._meta.ordering
        rows = queryset.model._default_manager.filter(id__in=self.page.object_list.values("id"))
        if isinstance(related, dict):
            rows = rows.select_related(*related)
        self.page.object_list = list(rows.order_by(*order))
        return self.page.object_list
