//! What of a server's answer about a new key is believed: its clock
//! offset (from the `Date` header) and the key's stated times.

use time::OffsetDateTime;

use crate::api::keys::KeyObject;

/// Server clock offsets below this are Date-header noise and ignored.
const SKEW_IGNORED: time::Duration = time::Duration::seconds(5);

/// How far from the moment its answer arrived (in the server's clock) a
/// new key's `tm_create` may lie: the request's duration and the `Date`
/// header's one-second resolution. Beyond, it is not believed.
const CREATE_SLACK: time::Duration = time::Duration::minutes(5);

/// The skew to apply, from a `Date`-header estimate: small ones are noise;
/// one beyond [`crate::token::MAX_SKEW`] is not believed (taken as zero;
/// see [`implausible_skew`]).
pub fn skew_seconds(server_skew: Option<time::Duration>) -> i64 {
    server_skew
        .filter(|s| s.abs() > SKEW_IGNORED)
        .and_then(crate::token::believable_skew)
        .map_or(0, |s| s.whole_seconds())
}

/// True when the `Date`-header estimate is beyond belief (and ignored).
pub fn implausible_skew(server_skew: Option<time::Duration>) -> bool {
    server_skew.is_some_and(|s| crate::token::believable_skew(s).is_none())
}

/// Makes a new key's stated times believable, in the server's clock:
/// a `tm_create` further than [`CREATE_SLACK`] from when the answer
/// arrived is taken as that moment, and a life longer than `asked` (plus a
/// minute) is cut to `asked`. Saturating throughout (a server may say
/// 9999). Returns which of the two were not believed.
pub fn plausible_key_times(
    object: &mut KeyObject,
    received_at: OffsetDateTime,
    skew_seconds: i64,
    asked: time::Duration,
) -> (bool, bool) {
    let received = received_at.saturating_add(time::Duration::seconds(skew_seconds));
    let create_ignored = object.tm_create > received.saturating_add(CREATE_SLACK)
        || object.tm_create < received.saturating_sub(CREATE_SLACK);
    if create_ignored {
        object.tm_create = received;
    }
    let expiry_cut = object.tm_expire - object.tm_create > asked + time::Duration::minutes(1);
    if expiry_cut {
        object.tm_expire = object.tm_create.saturating_add(asked);
    }
    (create_ignored, expiry_cut)
}
