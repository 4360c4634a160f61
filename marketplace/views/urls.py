from django.contrib.auth import views as auth_views
from django.urls import path

from . import account, accounts, bundles, datasets, job_rows, jobs, market, provider, stake, wallets

urlpatterns = [
    path("", market.home, name="home"),
    # Accounts
    path("login/", accounts.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("signup/", accounts.signup, name="signup"),
    path("organization/", accounts.organization, name="organization"),
    path("organization/rotate-join-code/", accounts.organization_rotate_code,
         name="organization_rotate_code"),
    # Market
    path("offers/", market.offer_list, name="offers"),
    path("offers/<int:pk>/", market.offer_detail, name="offer_detail"),
    # Jobs (consumers)
    path("jobs/", jobs.job_list, name="jobs"),
    path("datasets/", datasets.dataset_list, name="datasets"),
    path("bundles/", bundles.bundle_list, name="bundles"),
    path("bundles/<int:pk>/delete/", bundles.bundle_delete_view, name="bundle_delete"),
    path("jobs/new/", jobs.job_new, name="job_new"),
    path("jobs/new/quote/", jobs.job_quote, name="job_quote"),
    path("jobs/new/template-fields/", jobs.job_template_fields, name="job_template_fields"),
    path("jobs/<int:pk>/", jobs.job_detail, name="job_detail"),
    path("jobs/<int:pk>/verification-method/", jobs.job_verification_method_view,
         name="job_verification_method"),
    path("jobs/<int:pk>/row/", job_rows.job_row, name="job_row"),
    path("jobs/<int:pk>/cancel/", jobs.job_cancel_view, name="job_cancel"),
    path("jobs/<int:pk>/fund/", jobs.job_fund_view, name="job_fund"),
    path("jobs/<int:pk>/budget/", jobs.job_budget_view, name="job_budget"),
    path("chain/tx/<str:tx_hash>/", jobs.chain_tx, name="chain-tx"),
    path("jobs/<int:pk>/progress/", jobs.job_progress_view, name="job_progress"),
    # Account: balances, money movements, statements, the development faucet
    path("account/", account.account, name="account"),
    path("account/balance/", account.account_balance, name="account_balance"),
    path("account/faucet/", account.account_faucet, name="account_faucet"),
    path("account/statements/<int:year>-<int:month>.<str:fmt>", account.account_month_statement,
         name="account_month_statement"),
    path("jobs/<int:pk>/statement.<str:fmt>", account.job_statement, name="job_statement"),
    path("jobs/<int:pk>/dispute/", jobs.job_dispute_view, name="job_dispute"),
    # Wallets (both kinds of organization)
    path("wallets/", wallets.wallet_list, name="wallets"),
    path("wallets/<int:pk>/payout/", wallets.wallet_payout, name="wallet_payout"),
    # Providers
    path("provider/nodes/", provider.node_list, name="provider_nodes"),
    path("provider/nodes/new/", provider.node_new, name="provider_node_new"),
    path("provider/nodes/register-code/", provider.node_register_code, name="provider_node_register_code"),
    path("provider/nodes/<int:pk>/rotate-token/", provider.node_rotate,
         name="provider_node_rotate"),
    path("provider/offers/", provider.offer_mine, name="provider_offers"),
    path("provider/offers/new/", provider.offer_new, name="provider_offer_new"),
    path("provider/offers/capacity/", provider.offer_capacity, name="provider_offer_capacity"),
    path("provider/offers/<int:pk>/edit/", provider.offer_edit, name="provider_offer_edit"),
    path("provider/offers/<int:pk>/status/", provider.offer_status, name="provider_offer_status"),
    path("provider/stake/", stake.stake_page, name="provider_stake"),
]
