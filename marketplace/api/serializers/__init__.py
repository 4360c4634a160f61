"""Input serializers parse and type-check; the services own the domain rules and their
messages. Output serializers render. Decimals are strings (money keeps its 6 places).
One module per area; the API's views use them as `serializers.X`."""

from .common import (
    ErrorSerializer,
    MeOrganizationSerializer,
    MeSerializer,
    TokenRequestSerializer,
    TokenSerializer,
)
from .datasets import (
    BundleSerializer,
    BundleUploadSerializer,
    DatasetSerializer,
    DatasetUploadSerializer,
    RuntimeSerializer,
    UploadCreateSerializer,
    UploadSerializer,
)
from .jobs import (
    AssignmentSerializer,
    BudgetSerializer,
    CandidateSerializer,
    FundSerializer,
    JobDetailSerializer,
    JobEventSerializer,
    JobListSerializer,
    JobSpecSerializer,
    MetricPointSerializer,
    QuoteSerializer,
    ReasonSerializer,
    VerificationSerializer,
)
from .market import (
    NodeSerializer,
    NodeWithTokenSerializer,
    NodeWriteSerializer,
    OfferListSerializer,
    OfferSerializer,
    OfferWriteSerializer,
    TemplateSerializer,
)
from .wallets import (
    PayoutChangeSerializer,
    SiweNonceSerializer,
    WalletLinkSerializer,
    WalletSerializer,
)

__all__ = [
    "AssignmentSerializer",
    "BudgetSerializer",
    "BundleSerializer",
    "BundleUploadSerializer",
    "CandidateSerializer",
    "DatasetSerializer",
    "DatasetUploadSerializer",
    "ErrorSerializer",
    "FundSerializer",
    "JobDetailSerializer",
    "JobEventSerializer",
    "JobListSerializer",
    "JobSpecSerializer",
    "MeOrganizationSerializer",
    "MeSerializer",
    "MetricPointSerializer",
    "NodeSerializer",
    "NodeWithTokenSerializer",
    "NodeWriteSerializer",
    "OfferListSerializer",
    "OfferSerializer",
    "OfferWriteSerializer",
    "PayoutChangeSerializer",
    "QuoteSerializer",
    "ReasonSerializer",
    "RuntimeSerializer",
    "SiweNonceSerializer",
    "TemplateSerializer",
    "TokenRequestSerializer",
    "TokenSerializer",
    "UploadCreateSerializer",
    "UploadSerializer",
    "VerificationSerializer",
    "WalletLinkSerializer",
    "WalletSerializer",
]
