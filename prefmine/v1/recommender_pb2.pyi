from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_TYPE_UNSPECIFIED: _ClassVar[EventType]
    EVENT_TYPE_VIEW: _ClassVar[EventType]
    EVENT_TYPE_CLICK: _ClassVar[EventType]
    EVENT_TYPE_CART: _ClassVar[EventType]
    EVENT_TYPE_BUY: _ClassVar[EventType]
    EVENT_TYPE_RATE: _ClassVar[EventType]

class Diversity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIVERSITY_NONE: _ClassVar[Diversity]
    DIVERSITY_MMR: _ClassVar[Diversity]
    DIVERSITY_CATEGORY_CAP: _ClassVar[Diversity]
EVENT_TYPE_UNSPECIFIED: EventType
EVENT_TYPE_VIEW: EventType
EVENT_TYPE_CLICK: EventType
EVENT_TYPE_CART: EventType
EVENT_TYPE_BUY: EventType
EVENT_TYPE_RATE: EventType
DIVERSITY_NONE: Diversity
DIVERSITY_MMR: Diversity
DIVERSITY_CATEGORY_CAP: Diversity

class Event(_message.Message):
    __slots__ = ("user_id", "item_id", "type", "timestamp", "rating", "impression_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    IMPRESSION_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    item_id: str
    type: EventType
    timestamp: int
    rating: float
    impression_id: str
    def __init__(self, user_id: _Optional[str] = ..., item_id: _Optional[str] = ..., type: _Optional[_Union[EventType, str]] = ..., timestamp: _Optional[int] = ..., rating: _Optional[float] = ..., impression_id: _Optional[str] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "k", "exclude_item_ids", "recent_events", "placement", "explain", "rules")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    RECENT_EVENTS_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    k: int
    exclude_item_ids: _containers.RepeatedScalarFieldContainer[str]
    recent_events: _containers.RepeatedCompositeFieldContainer[Event]
    placement: str
    explain: bool
    rules: Rules
    def __init__(self, user_id: _Optional[str] = ..., k: _Optional[int] = ..., exclude_item_ids: _Optional[_Iterable[str]] = ..., recent_events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., placement: _Optional[str] = ..., explain: _Optional[bool] = ..., rules: _Optional[_Union[Rules, _Mapping]] = ...) -> None: ...

class Pin(_message.Message):
    __slots__ = ("item_id", "position")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    position: int
    def __init__(self, item_id: _Optional[str] = ..., position: _Optional[int] = ...) -> None: ...

class Rules(_message.Message):
    __slots__ = ("categories", "brands", "kinds", "price_min", "price_max", "include_unavailable", "boosts", "pins", "diversity", "mmr_lambda", "category_cap", "repurchase_gap_s", "kind_quota", "freshness_half_life_s")
    class BoostsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class RepurchaseGapSEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class KindQuotaEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    BRANDS_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    PRICE_MIN_FIELD_NUMBER: _ClassVar[int]
    PRICE_MAX_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_UNAVAILABLE_FIELD_NUMBER: _ClassVar[int]
    BOOSTS_FIELD_NUMBER: _ClassVar[int]
    PINS_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    MMR_LAMBDA_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_CAP_FIELD_NUMBER: _ClassVar[int]
    REPURCHASE_GAP_S_FIELD_NUMBER: _ClassVar[int]
    KIND_QUOTA_FIELD_NUMBER: _ClassVar[int]
    FRESHNESS_HALF_LIFE_S_FIELD_NUMBER: _ClassVar[int]
    categories: _containers.RepeatedScalarFieldContainer[str]
    brands: _containers.RepeatedScalarFieldContainer[str]
    kinds: _containers.RepeatedScalarFieldContainer[str]
    price_min: float
    price_max: float
    include_unavailable: bool
    boosts: _containers.ScalarMap[str, float]
    pins: _containers.RepeatedCompositeFieldContainer[Pin]
    diversity: Diversity
    mmr_lambda: float
    category_cap: int
    repurchase_gap_s: _containers.ScalarMap[str, float]
    kind_quota: _containers.ScalarMap[str, int]
    freshness_half_life_s: float
    def __init__(self, categories: _Optional[_Iterable[str]] = ..., brands: _Optional[_Iterable[str]] = ..., kinds: _Optional[_Iterable[str]] = ..., price_min: _Optional[float] = ..., price_max: _Optional[float] = ..., include_unavailable: _Optional[bool] = ..., boosts: _Optional[_Mapping[str, float]] = ..., pins: _Optional[_Iterable[_Union[Pin, _Mapping]]] = ..., diversity: _Optional[_Union[Diversity, str]] = ..., mmr_lambda: _Optional[float] = ..., category_cap: _Optional[int] = ..., repurchase_gap_s: _Optional[_Mapping[str, float]] = ..., kind_quota: _Optional[_Mapping[str, int]] = ..., freshness_half_life_s: _Optional[float] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "score", "title", "reason", "propensity")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PROPENSITY_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    title: str
    reason: str
    propensity: float
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., title: _Optional[str] = ..., reason: _Optional[str] = ..., propensity: _Optional[float] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "bundle_version", "cold_start", "placement", "impression_id", "arm")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    COLD_START_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    IMPRESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    bundle_version: str
    cold_start: bool
    placement: str
    impression_id: str
    arm: str
    def __init__(self, items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., bundle_version: _Optional[str] = ..., cold_start: _Optional[bool] = ..., placement: _Optional[str] = ..., impression_id: _Optional[str] = ..., arm: _Optional[str] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("user_id", "query", "k", "rules")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    query: str
    k: int
    rules: Rules
    def __init__(self, user_id: _Optional[str] = ..., query: _Optional[str] = ..., k: _Optional[int] = ..., rules: _Optional[_Union[Rules, _Mapping]] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ("item_id", "score", "text_score", "relevance", "title", "lexical_score")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TEXT_SCORE_FIELD_NUMBER: _ClassVar[int]
    RELEVANCE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    LEXICAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    text_score: float
    relevance: float
    title: str
    lexical_score: float
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., text_score: _Optional[float] = ..., relevance: _Optional[float] = ..., title: _Optional[str] = ..., lexical_score: _Optional[float] = ...) -> None: ...

class Facet(_message.Message):
    __slots__ = ("field", "value", "count")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    field: str
    value: str
    count: int
    def __init__(self, field: _Optional[str] = ..., value: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("results", "bundle_version", "cold_start", "facets", "retrieval")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    COLD_START_FIELD_NUMBER: _ClassVar[int]
    FACETS_FIELD_NUMBER: _ClassVar[int]
    RETRIEVAL_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    bundle_version: str
    cold_start: bool
    facets: _containers.RepeatedCompositeFieldContainer[Facet]
    retrieval: str
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ..., bundle_version: _Optional[str] = ..., cold_start: _Optional[bool] = ..., facets: _Optional[_Iterable[_Union[Facet, _Mapping]]] = ..., retrieval: _Optional[str] = ...) -> None: ...

class RankRequest(_message.Message):
    __slots__ = ("user_id", "candidate_item_ids", "bids", "campaign_ids")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATE_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    BIDS_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_IDS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    candidate_item_ids: _containers.RepeatedScalarFieldContainer[str]
    bids: _containers.RepeatedScalarFieldContainer[float]
    campaign_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user_id: _Optional[str] = ..., candidate_item_ids: _Optional[_Iterable[str]] = ..., bids: _Optional[_Iterable[float]] = ..., campaign_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class RankedItem(_message.Message):
    __slots__ = ("item_id", "click_probability", "bid", "expected_value", "price", "campaign_id", "ad_slot", "ad_impression_id")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CLICK_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    BID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VALUE_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    AD_SLOT_FIELD_NUMBER: _ClassVar[int]
    AD_IMPRESSION_ID_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    click_probability: float
    bid: float
    expected_value: float
    price: float
    campaign_id: str
    ad_slot: int
    ad_impression_id: str
    def __init__(self, item_id: _Optional[str] = ..., click_probability: _Optional[float] = ..., bid: _Optional[float] = ..., expected_value: _Optional[float] = ..., price: _Optional[float] = ..., campaign_id: _Optional[str] = ..., ad_slot: _Optional[int] = ..., ad_impression_id: _Optional[str] = ...) -> None: ...

class UnplacedAd(_message.Message):
    __slots__ = ("item_id", "campaign_id", "reason")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    campaign_id: str
    reason: str
    def __init__(self, item_id: _Optional[str] = ..., campaign_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RankResponse(_message.Message):
    __slots__ = ("items", "unknown_item_ids", "bundle_version", "cold_start", "unplaced", "calibrated")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    COLD_START_FIELD_NUMBER: _ClassVar[int]
    UNPLACED_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[RankedItem]
    unknown_item_ids: _containers.RepeatedScalarFieldContainer[str]
    bundle_version: str
    cold_start: bool
    unplaced: _containers.RepeatedCompositeFieldContainer[UnplacedAd]
    calibrated: bool
    def __init__(self, items: _Optional[_Iterable[_Union[RankedItem, _Mapping]]] = ..., unknown_item_ids: _Optional[_Iterable[str]] = ..., bundle_version: _Optional[str] = ..., cold_start: _Optional[bool] = ..., unplaced: _Optional[_Iterable[_Union[UnplacedAd, _Mapping]]] = ..., calibrated: _Optional[bool] = ...) -> None: ...

class SimilarItemsRequest(_message.Message):
    __slots__ = ("item_id", "k", "rules")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    RULES_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    k: int
    rules: Rules
    def __init__(self, item_id: _Optional[str] = ..., k: _Optional[int] = ..., rules: _Optional[_Union[Rules, _Mapping]] = ...) -> None: ...

class SimilarItem(_message.Message):
    __slots__ = ("item_id", "similarity", "title")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    similarity: float
    title: str
    def __init__(self, item_id: _Optional[str] = ..., similarity: _Optional[float] = ..., title: _Optional[str] = ...) -> None: ...

class SimilarItemsResponse(_message.Message):
    __slots__ = ("items", "bundle_version")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[SimilarItem]
    bundle_version: str
    def __init__(self, items: _Optional[_Iterable[_Union[SimilarItem, _Mapping]]] = ..., bundle_version: _Optional[str] = ...) -> None: ...

class GetUserProfileRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class WeightedTerm(_message.Message):
    __slots__ = ("name", "weight")
    NAME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    name: str
    weight: float
    def __init__(self, name: _Optional[str] = ..., weight: _Optional[float] = ...) -> None: ...

class PreferenceSummary(_message.Message):
    __slots__ = ("dim", "norm", "top_item_ids")
    DIM_FIELD_NUMBER: _ClassVar[int]
    NORM_FIELD_NUMBER: _ClassVar[int]
    TOP_ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    dim: int
    norm: float
    top_item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dim: _Optional[int] = ..., norm: _Optional[float] = ..., top_item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class UserProfile(_message.Message):
    __slots__ = ("known", "history_length", "feedback_counts", "top_categories", "top_brands", "keywords", "preference", "bundle_version")
    class FeedbackCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    HISTORY_LENGTH_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_COUNTS_FIELD_NUMBER: _ClassVar[int]
    TOP_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    TOP_BRANDS_FIELD_NUMBER: _ClassVar[int]
    KEYWORDS_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    known: bool
    history_length: int
    feedback_counts: _containers.ScalarMap[str, int]
    top_categories: _containers.RepeatedCompositeFieldContainer[WeightedTerm]
    top_brands: _containers.RepeatedCompositeFieldContainer[WeightedTerm]
    keywords: _containers.RepeatedCompositeFieldContainer[WeightedTerm]
    preference: PreferenceSummary
    bundle_version: str
    def __init__(self, known: _Optional[bool] = ..., history_length: _Optional[int] = ..., feedback_counts: _Optional[_Mapping[str, int]] = ..., top_categories: _Optional[_Iterable[_Union[WeightedTerm, _Mapping]]] = ..., top_brands: _Optional[_Iterable[_Union[WeightedTerm, _Mapping]]] = ..., keywords: _Optional[_Iterable[_Union[WeightedTerm, _Mapping]]] = ..., preference: _Optional[_Union[PreferenceSummary, _Mapping]] = ..., bundle_version: _Optional[str] = ...) -> None: ...

class RecordFeedbackRequest(_message.Message):
    __slots__ = ("events", "idempotency_key")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    idempotency_key: str
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class RecordFeedbackResponse(_message.Message):
    __slots__ = ("stored", "last_id")
    STORED_FIELD_NUMBER: _ClassVar[int]
    LAST_ID_FIELD_NUMBER: _ClassVar[int]
    stored: int
    last_id: int
    def __init__(self, stored: _Optional[int] = ..., last_id: _Optional[int] = ...) -> None: ...

class CatalogRow(_message.Message):
    __slots__ = ("item_id", "retire", "title", "brand", "categories", "price", "available", "kind", "published", "description")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    RETIRE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    BRAND_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    retire: bool
    title: str
    brand: str
    categories: _containers.RepeatedScalarFieldContainer[str]
    price: float
    available: bool
    kind: str
    published: float
    description: str
    def __init__(self, item_id: _Optional[str] = ..., retire: _Optional[bool] = ..., title: _Optional[str] = ..., brand: _Optional[str] = ..., categories: _Optional[_Iterable[str]] = ..., price: _Optional[float] = ..., available: _Optional[bool] = ..., kind: _Optional[str] = ..., published: _Optional[float] = ..., description: _Optional[str] = ...) -> None: ...

class WriteCatalogRequest(_message.Message):
    __slots__ = ("rows", "idempotency_key")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[CatalogRow]
    idempotency_key: str
    def __init__(self, rows: _Optional[_Iterable[_Union[CatalogRow, _Mapping]]] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class CatalogRowError(_message.Message):
    __slots__ = ("index", "item_id", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    item_id: str
    reason: str
    def __init__(self, index: _Optional[int] = ..., item_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class WriteCatalogResponse(_message.Message):
    __slots__ = ("stored", "last_id", "refused")
    STORED_FIELD_NUMBER: _ClassVar[int]
    LAST_ID_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    stored: int
    last_id: int
    refused: _containers.RepeatedCompositeFieldContainer[CatalogRowError]
    def __init__(self, stored: _Optional[int] = ..., last_id: _Optional[int] = ..., refused: _Optional[_Iterable[_Union[CatalogRowError, _Mapping]]] = ...) -> None: ...

class CampaignRow(_message.Message):
    __slots__ = ("campaign_id", "daily_budget", "freq_cap", "active")
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    DAILY_BUDGET_FIELD_NUMBER: _ClassVar[int]
    FREQ_CAP_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    campaign_id: str
    daily_budget: float
    freq_cap: int
    active: bool
    def __init__(self, campaign_id: _Optional[str] = ..., daily_budget: _Optional[float] = ..., freq_cap: _Optional[int] = ..., active: _Optional[bool] = ...) -> None: ...

class WriteCampaignsRequest(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[CampaignRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[CampaignRow, _Mapping]]] = ...) -> None: ...

class CampaignRowError(_message.Message):
    __slots__ = ("index", "campaign_id", "reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    campaign_id: str
    reason: str
    def __init__(self, index: _Optional[int] = ..., campaign_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class WriteCampaignsResponse(_message.Message):
    __slots__ = ("stored", "refused")
    STORED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    stored: int
    refused: _containers.RepeatedCompositeFieldContainer[CampaignRowError]
    def __init__(self, stored: _Optional[int] = ..., refused: _Optional[_Iterable[_Union[CampaignRowError, _Mapping]]] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ComponentInfo(_message.Message):
    __slots__ = ("name", "version", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ModelInfoResponse(_message.Message):
    __slots__ = ("bundle_version", "components", "n_items", "created", "data_hash", "embedding_dim", "policy_gate")
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    N_ITEMS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    DATA_HASH_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_DIM_FIELD_NUMBER: _ClassVar[int]
    POLICY_GATE_FIELD_NUMBER: _ClassVar[int]
    bundle_version: str
    components: _containers.RepeatedCompositeFieldContainer[ComponentInfo]
    n_items: int
    created: str
    data_hash: str
    embedding_dim: int
    policy_gate: PolicyGate
    def __init__(self, bundle_version: _Optional[str] = ..., components: _Optional[_Iterable[_Union[ComponentInfo, _Mapping]]] = ..., n_items: _Optional[int] = ..., created: _Optional[str] = ..., data_hash: _Optional[str] = ..., embedding_dim: _Optional[int] = ..., policy_gate: _Optional[_Union[PolicyGate, _Mapping]] = ...) -> None: ...

class PolicyGate(_message.Message):
    __slots__ = ("served", "learned", "best_heuristic", "reason", "mix_alpha", "figures")
    SERVED_FIELD_NUMBER: _ClassVar[int]
    LEARNED_FIELD_NUMBER: _ClassVar[int]
    BEST_HEURISTIC_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MIX_ALPHA_FIELD_NUMBER: _ClassVar[int]
    FIGURES_FIELD_NUMBER: _ClassVar[int]
    served: str
    learned: str
    best_heuristic: str
    reason: str
    mix_alpha: float
    figures: _containers.RepeatedCompositeFieldContainer[PolicyFigure]
    def __init__(self, served: _Optional[str] = ..., learned: _Optional[str] = ..., best_heuristic: _Optional[str] = ..., reason: _Optional[str] = ..., mix_alpha: _Optional[float] = ..., figures: _Optional[_Iterable[_Union[PolicyFigure, _Mapping]]] = ...) -> None: ...

class PolicyFigure(_message.Message):
    __slots__ = ("policy", "return_mean", "ci95")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    RETURN_MEAN_FIELD_NUMBER: _ClassVar[int]
    CI95_FIELD_NUMBER: _ClassVar[int]
    policy: str
    return_mean: float
    ci95: float
    def __init__(self, policy: _Optional[str] = ..., return_mean: _Optional[float] = ..., ci95: _Optional[float] = ...) -> None: ...
