//! The variants a call runs with, carried across services in one header:
//! `x-ab-variant: checkout-fee=v1, page-size=large` (experiment=variant,
//! comma-separated, like W3C baggage; several experiments fit).
//!
//! [`VariantServerLayer`] reads the header into a [`CallVariants`] that the
//! handler finds in the request's extensions (and in a task local), lets the
//! handler record the assignments it makes, and answers with the header —
//! as the article's middleware sets `X-AB-Variant`. [`VariantClientLayer`]
//! puts the call's variants on every outgoing request made while serving
//! it, so a downstream service keeps the same variant.

mod layer;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use http::HeaderValue;

use crate::is_key_text as valid;

pub use layer::{
    VariantClientLayer, VariantClientService, VariantFuture, VariantServerLayer,
    VariantServerService,
};

/// The header's name.
pub const HEADER: &str = "x-ab-variant";

/// Entries read from one header; the rest is ignored (a bounded cost for
/// whatever a client sends).
const MAX_ENTRIES: usize = 32;

tokio::task_local! {
    static CURRENT: CallVariants;
}

/// Experiment key → variant key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variants(BTreeMap<String, String>);

impl Variants {
    /// The entries of a header value; malformed entries are skipped, a
    /// repeated experiment keeps its first variant.
    pub fn parse(value: &str) -> Self {
        let mut variants = BTreeMap::new();
        for entry in value.split(',').take(MAX_ENTRIES) {
            if let Some((experiment, variant)) = entry.trim().split_once('=')
                && valid(experiment.trim())
                && valid(variant.trim())
            {
                variants
                    .entry(experiment.trim().to_owned())
                    .or_insert_with(|| variant.trim().to_owned());
            }
        }
        Self(variants)
    }

    pub fn get(&self, experiment: &str) -> Option<&str> {
        self.0.get(experiment).map(String::as_str)
    }

    /// Sets the variant of `experiment` (keys that could not be parsed
    /// back are not kept).
    pub fn insert(&mut self, experiment: &str, variant: &str) {
        if valid(experiment) && valid(variant) && self.0.len() < MAX_ENTRIES {
            self.0.insert(experiment.to_owned(), variant.to_owned());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The header value, None when there is nothing to carry.
    pub fn to_header(&self) -> Option<HeaderValue> {
        if self.0.is_empty() {
            return None;
        }
        let text: Vec<String> = self.0.iter().map(|(e, v)| format!("{e}={v}")).collect();
        HeaderValue::from_str(&text.join(",")).ok()
    }
}

/// The variants of the call being served: those it arrived with, and those
/// its handler assigned (shared by the handler, the layer and the calls the
/// handler makes).
#[derive(Debug, Clone, Default)]
pub struct CallVariants(Arc<Mutex<Variants>>);

impl CallVariants {
    pub fn new(variants: Variants) -> Self {
        Self(Arc::new(Mutex::new(variants)))
    }

    /// The variant of `experiment` the call carries.
    pub fn get(&self, experiment: &str) -> Option<String> {
        self.0.lock().ok()?.get(experiment).map(str::to_owned)
    }

    /// Records the variant the handler assigned: answered in the header and
    /// passed on downstream.
    pub fn record(&self, experiment: &str, variant: &str) {
        if let Ok(mut variants) = self.0.lock() {
            variants.insert(experiment, variant);
        }
    }

    /// The header value the answer carries (None when there is nothing to carry).
    pub fn to_header(&self) -> Option<HeaderValue> {
        self.0.lock().ok()?.to_header()
    }

    pub fn snapshot(&self) -> Variants {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The variants of the call this task is serving, if any.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_carries_several_experiments_and_ignores_junk() {
        let v =
            Variants::parse(" checkout-fee=v1, page-size = large,BAD=x,=y,noeq,checkout-fee=v2");
        assert_eq!(v.get("checkout-fee"), Some("v1"));
        assert_eq!(v.get("page-size"), Some("large"));
        assert_eq!(v.get("BAD"), None);
        assert_eq!(
            v.to_header().unwrap_or(HeaderValue::from_static("")),
            "checkout-fee=v1,page-size=large"
        );
        assert_eq!(Variants::parse("").to_header(), None);
        let many: Vec<String> = (0..100).map(|i| format!("e{i}=v")).collect();
        assert_eq!(Variants::parse(&many.join(",")).0.len(), MAX_ENTRIES);
    }
}
