//! Which BullMQ wrote a queue, as its meta hash records it (`bullmq:6.7.0`),
//! and whether the warden may write there.
//!
//! The warden writes through BullMQ 6.7's scripts and reads keys whose layout
//! was verified against BullMQ 5 and 6. Another major version may lay its keys
//! out otherwise, and writing there could corrupt the queue; so the warden
//! reports such a queue and leaves it alone unless an operator opts in.

/// BullMQ major versions the warden's reads and writes were verified against.
const VERIFIED_MAJORS: [u32; 2] = [5, 6];

/// What the recorded version allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VersionCheck {
    /// No version recorded: a queue BullMQ never set up, or one whose meta
    /// hash was lost (a flush).
    Absent,
    Verified,
    /// A major version the warden was not verified against, or a text it
    /// cannot read; holds the recorded text.
    Unverified(String),
}

impl VersionCheck {
    pub(crate) fn of(recorded: Option<&str>) -> Self {
        let Some(recorded) = recorded.filter(|text| !text.is_empty()) else {
            return VersionCheck::Absent;
        };
        let major = recorded
            .strip_prefix("bullmq:")
            .and_then(|version| version.split('.').next())
            .and_then(|major| major.parse::<u32>().ok());
        match major {
            Some(major) if VERIFIED_MAJORS.contains(&major) => VersionCheck::Verified,
            _ => VersionCheck::Unverified(recorded.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bullmq_5_and_6_are_verified() {
        assert_eq!(
            VersionCheck::of(Some("bullmq:6.7.0")),
            VersionCheck::Verified
        );
        assert_eq!(
            VersionCheck::of(Some("bullmq:5.81.5")),
            VersionCheck::Verified
        );
        assert_eq!(VersionCheck::of(None), VersionCheck::Absent);
        assert_eq!(VersionCheck::of(Some("")), VersionCheck::Absent);
        for other in [
            "bullmq:7.0.0",
            "bullmq:4.17.0",
            "bullmq:1.0.0",
            "bullmq-pro:7.1.0",
            "6.7.0",
        ] {
            assert_eq!(
                VersionCheck::of(Some(other)),
                VersionCheck::Unverified(other.into()),
                "{other}"
            );
        }
    }
}
