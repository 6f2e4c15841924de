//! Sticky assignment: the same experiment and user give the same answer on
//! every replica, after every restart, with no write.

use aws_lc_rs::digest;

use crate::model::{Attributes, Experiment, Status, compare_versions, parse_version};

/// Buckets per hash: 0.01 % resolution for traffic shares and weights.
pub const BUCKETS: u32 = 10_000;

/// Why a user is or is not in the experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Enrolled by the hashes.
    Assigned,
    /// The experiment is not RUNNING, or now is outside its window.
    NotRunning,
    /// The user's attributes miss the targeting.
    NotTargeted,
    /// Eligible, but outside the traffic share.
    NotInTraffic,
    /// A QA override named this user.
    Forced,
}

/// The outcome for one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    pub reason: Reason,
    /// Index into the experiment's variants when the user is in it.
    pub variant: Option<usize>,
}

impl Assignment {
    fn out(reason: Reason) -> Self {
        Self {
            reason,
            variant: None,
        }
    }
}

/// The bucket (0..10 000) of `user_id` for one `purpose` of an experiment:
/// 64 bits of SHA-256 over the length-prefixed parts (so no two different
/// inputs run together into the same text), modulo 10 000 (bias below
/// 10⁻¹⁵). Different purposes give independent buckets.
pub fn bucket(purpose: &str, key: &str, salt: &str, user_id: &str) -> u32 {
    let mut context = digest::Context::new(&digest::SHA256);
    for part in [purpose, key, salt, user_id] {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part.as_bytes());
    }
    let hash = context.finish();
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_ref()[..8]);
    // The remainder is below 10 000, so it fits in u32.
    (u64::from_be_bytes(first) % u64::from(BUCKETS)) as u32
}

fn targeted(experiment: &Experiment, attributes: &Attributes) -> bool {
    let targeting = &experiment.targeting;
    let listed = |list: &[String], value: &str| {
        list.is_empty()
            || list
                .iter()
                .any(|item| item.eq_ignore_ascii_case(value.trim()))
    };
    let in_segment = targeting.segments.is_empty()
        || attributes
            .segments
            .iter()
            .any(|s| targeting.segments.contains(s));
    let version = parse_version(&attributes.app_version);
    let within = |bound: &Option<String>, ok: fn(std::cmp::Ordering) -> bool| match bound {
        None => true,
        Some(bound) => match (&version, parse_version(bound)) {
            (Some(version), Some(bound)) => ok(compare_versions(version, &bound)),
            // No version (or an unreadable one) cannot be shown to be in range.
            _ => false,
        },
    };
    in_segment
        && listed(&targeting.countries, &attributes.country)
        && listed(&targeting.device_types, &attributes.device_type)
        && within(&targeting.min_app_version, std::cmp::Ordering::is_ge)
        && within(&targeting.max_app_version, std::cmp::Ordering::is_le)
}

/// The assignment of `user_id` at `now` (epoch microseconds). Forced
/// variants apply in any status but ENDED (QA tries a DRAFT experiment
/// out); everything else needs RUNNING inside the window, the targeting,
/// then the traffic bucket, then the variant bucket over the weights in
/// their declared order.
pub fn assign(
    experiment: &Experiment,
    user_id: &str,
    attributes: &Attributes,
    now: i64,
) -> Assignment {
    if experiment.status != Status::Ended
        && let Some(forced) = experiment.forced_variants.get(user_id)
        && let Some(index) = experiment.variants.iter().position(|v| &v.key == forced)
    {
        return Assignment {
            reason: Reason::Forced,
            variant: Some(index),
        };
    }
    let started = experiment.start_time.is_none_or(|start| now >= start);
    let not_ended = experiment.end_time.is_none_or(|end| now < end);
    if experiment.status != Status::Running || !started || !not_ended {
        return Assignment::out(Reason::NotRunning);
    }
    if !targeted(experiment, attributes) {
        return Assignment::out(Reason::NotTargeted);
    }
    let (key, salt) = (experiment.key.as_str(), experiment.salt.as_str());
    if bucket("traffic", key, salt, user_id) >= experiment.traffic_percent * (BUCKETS / 100) {
        return Assignment::out(Reason::NotInTraffic);
    }
    let point = bucket("variant", key, salt, user_id);
    let mut upper = 0;
    for (index, variant) in experiment.variants.iter().enumerate() {
        upper += variant.weight * (BUCKETS / 100);
        if point < upper {
            return Assignment {
                reason: Reason::Assigned,
                variant: Some(index),
            };
        }
    }
    // Weights that do not sum to 100 are refused when stored; if one got
    // through, the uncovered buckets are simply not enrolled.
    Assignment::out(Reason::NotInTraffic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{stats, validate::tests::experiment};

    fn user(i: u32) -> String {
        format!("0193a000-0000-7000-8000-{i:012}")
    }

    #[test]
    fn a_hundred_thousand_users_split_by_the_weights() {
        let e = experiment(&[50, 30, 20]);
        let mut counts = [0u64; 3];
        for i in 0..100_000 {
            let a = assign(&e, &user(i), &Attributes::default(), 0);
            assert_eq!(a.reason, Reason::Assigned);
            counts[a.variant.expect("enrolled")] += 1;
        }
        for (count, weight) in counts.iter().zip([50.0, 30.0, 20.0]) {
            let share = *count as f64 / 1000.0;
            assert!((share - weight).abs() <= 1.0, "{counts:?}");
        }
        let p = stats::srm_p_value(&counts, &[50, 30, 20]).expect("an SRM p-value");
        assert!(p > 0.001, "SRM p = {p} for {counts:?}");
    }

    #[test]
    fn the_traffic_share_enrols_its_share() {
        let mut e = experiment(&[50, 50]);
        e.traffic_percent = 10;
        let enrolled = (0..100_000)
            .filter(|i| {
                assign(&e, &user(*i), &Attributes::default(), 0)
                    .variant
                    .is_some()
            })
            .count();
        assert!((9_000..=11_000).contains(&enrolled), "{enrolled}");
    }

    #[test]
    fn ramping_up_moves_nobody_already_enrolled() {
        let mut e = experiment(&[50, 50]);
        e.traffic_percent = 10;
        let before: Vec<Option<usize>> = (0..20_000)
            .map(|i| assign(&e, &user(i), &Attributes::default(), 0).variant)
            .collect();
        e.traffic_percent = 50;
        let mut newly = 0;
        for (i, was) in before.iter().enumerate() {
            let now = assign(&e, &user(i as u32), &Attributes::default(), 0).variant;
            match was {
                Some(_) => assert_eq!(now, *was, "user {i} moved"),
                None => newly += usize::from(now.is_some()),
            }
        }
        assert!(newly > 7_000, "{newly} newly enrolled");
    }

    #[test]
    fn the_salt_reshuffles_and_the_key_separates() {
        let e = experiment(&[50, 50]);
        let mut other = e.clone();
        other.salt = "s2".into();
        let differ = (0..1000)
            .filter(|i| {
                assign(&e, &user(*i), &Attributes::default(), 0).variant
                    != assign(&other, &user(*i), &Attributes::default(), 0).variant
            })
            .count();
        assert!((400..=600).contains(&differ), "{differ}");
        assert_ne!(
            bucket("variant", "ab", "c", "u"),
            bucket("variant", "a", "bc", "u")
        );
    }

    #[test]
    fn status_window_and_forced_variants() {
        let mut e = experiment(&[50, 50]);
        let attributes = Attributes::default();
        e.forced_variants.insert("qa".into(), "v1".into());
        e.status = Status::Draft;
        assert_eq!(assign(&e, "u", &attributes, 0).reason, Reason::NotRunning);
        let forced = assign(&e, "qa", &attributes, 0);
        assert_eq!((forced.reason, forced.variant), (Reason::Forced, Some(1)));
        e.status = Status::Ended;
        assert_eq!(assign(&e, "qa", &attributes, 0).reason, Reason::NotRunning);
        e.status = Status::Running;
        (e.start_time, e.end_time) = (Some(100), Some(200));
        for (now, reason) in [
            (99, Reason::NotRunning),
            (100, Reason::Assigned),
            (199, Reason::Assigned),
            (200, Reason::NotRunning),
        ] {
            assert_eq!(assign(&e, "u", &attributes, now).reason, reason, "at {now}");
        }
    }

    #[test]
    fn targeting_matrix() {
        let mut e = experiment(&[50, 50]);
        e.targeting.countries = vec!["DE".into(), "fr".into()];
        e.targeting.device_types = vec!["ios".into()];
        e.targeting.segments = vec!["beta".into()];
        e.targeting.min_app_version = Some("2.1".into());
        e.targeting.max_app_version = Some("2.10".into());
        let base = Attributes {
            country: "de".into(),
            device_type: "iOS".into(),
            app_version: "2.9.3".into(),
            segments: vec!["staff".into(), "beta".into()],
        };
        let reason = |a: &Attributes| assign(&e, "u", a, 0).reason;
        assert_eq!(reason(&base), Reason::Assigned);
        let cases: Vec<(&str, Attributes)> = vec![
            (
                "country",
                Attributes {
                    country: "US".into(),
                    ..base.clone()
                },
            ),
            (
                "device",
                Attributes {
                    device_type: "android".into(),
                    ..base.clone()
                },
            ),
            (
                "segment",
                Attributes {
                    segments: vec!["staff".into()],
                    ..base.clone()
                },
            ),
            (
                "below min",
                Attributes {
                    app_version: "2.0.9".into(),
                    ..base.clone()
                },
            ),
            (
                "above max",
                Attributes {
                    app_version: "2.10.1".into(),
                    ..base.clone()
                },
            ),
            (
                "no version",
                Attributes {
                    app_version: String::new(),
                    ..base.clone()
                },
            ),
            (
                "bad version",
                Attributes {
                    app_version: "beta".into(),
                    ..base.clone()
                },
            ),
        ];
        for (what, attributes) in cases {
            assert_eq!(reason(&attributes), Reason::NotTargeted, "{what}");
        }
        for version in ["2.1", "2.1.0", "2.10", "2.10.0"] {
            let at_bound = Attributes {
                app_version: version.into(),
                ..base.clone()
            };
            assert_eq!(
                reason(&at_bound),
                Reason::Assigned,
                "bounds are inclusive: {version}"
            );
        }
        assert_eq!(
            reason(&Attributes {
                country: "FR".into(),
                ..base
            }),
            Reason::Assigned
        );
    }
}
