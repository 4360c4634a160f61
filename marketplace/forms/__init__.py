"""HTML forms. They parse and shape input; the services validate the domain rules and
raise MarketError, which `add_market_error` turns into a field error. One module per area."""

from .accounts import DatasetUploadForm, SignupForm, StakeForm, StakeWithdrawForm
from .common import utc_to_input
from .jobs import JobForm, QuoteForm
from .market import OfferFilterForm
from .provider import NodeForm, OfferForm

__all__ = ["DatasetUploadForm", "JobForm", "NodeForm", "OfferFilterForm", "OfferForm", "QuoteForm",
           "SignupForm", "StakeForm", "StakeWithdrawForm", "utc_to_input"]
