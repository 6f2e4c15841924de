//! The order service's one A/B experiment: the default page size of
//! ListProducts. A call without `page_size` asks the user service for the
//! caller's variant of the experiment named by `catalog_page_size_experiment`
//! (default `catalog-page-size`); a variant whose config has a `page_size`
//! of 1–1000 sets it, recorded in the call's `x-ab-variant` answer. No
//! experiment, no variant, or no answer in time: the usual default.

use mercato_experiment::propagation::CallVariants;
use prost_types::value::Kind;

use crate::peers::Peers;

/// The experiment behind ListProducts' default page size.
#[derive(Debug, Clone)]
pub struct PageSizeExperiment {
    peers: Peers,
    /// Empty: no experiment.
    key: String,
}

impl PageSizeExperiment {
    pub fn new(peers: Peers, key: String) -> Self {
        Self { peers, key }
    }

    /// The page size the caller's variant sets, if it sets one; the variant
    /// is recorded in `variants` (answered and passed downstream).
    pub async fn page_size(&self, user_id: &str, variants: Option<&CallVariants>) -> Option<u32> {
        if self.key.is_empty() {
            return None;
        }
        let (variant, config) = self.peers.assignment(&self.key, user_id).await?;
        if let Some(variants) = variants {
            variants.record(&self.key, &variant);
        }
        match config.fields.get("page_size")?.kind.as_ref()? {
            Kind::NumberValue(n) if n.fract() == 0.0 && (1.0..=1000.0).contains(n) => {
                // In 1..=1000 by the guard.
                Some(*n as u32)
            }
            _ => None,
        }
    }
}
