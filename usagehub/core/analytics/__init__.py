"""Pure consumption analytics: bucket alignment, behaviour features, segment rules, membership diffs."""

from usagehub.core.analytics.buckets import Bucket, bucket_start, floor_quarter
from usagehub.core.analytics.features import (
    AccountFeatures,
    DayUsage,
    LedgerEntry,
    UsageFeatures,
    compute_account_features,
    compute_usage_features,
)
from usagehub.core.analytics.membership import MembershipDiff, diff_members
from usagehub.core.analytics.privacy import pseudonym
from usagehub.core.analytics.rules import Rule, RuleError, evaluate, parse_rule, to_sql

__all__ = [
    "AccountFeatures", "Bucket", "DayUsage", "LedgerEntry", "MembershipDiff", "Rule", "RuleError", "UsageFeatures",
    "bucket_start", "compute_account_features", "compute_usage_features", "diff_members", "evaluate",
    "floor_quarter", "parse_rule", "pseudonym", "to_sql",
]
