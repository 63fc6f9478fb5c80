//! Clinical vocabulary shared by every data source: diagnoses and probe geometry.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The diagnostic classes of the study.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Diagnosis {
    Healthy,
    Covid,
    Pneumonia,
}

impl Diagnosis {
    /// Every diagnosis, in class-index order.
    pub const ALL: [Diagnosis; 3] = [Diagnosis::Healthy, Diagnosis::Covid, Diagnosis::Pneumonia];

    /// The class index used by classifiers.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The lower-case name used in files.
    pub fn as_str(self) -> &'static str {
        match self {
            Diagnosis::Healthy => "healthy",
            Diagnosis::Covid => "covid",
            Diagnosis::Pneumonia => "pneumonia",
        }
    }
}

impl fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Diagnosis {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Diagnosis::ALL
            .into_iter()
            .find(|d| d.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!("unknown diagnosis {s:?} (expected healthy, covid or pneumonia)")
            })
    }
}

/// The transducer geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    /// Linear array: rectangular field of view.
    Linear,
    /// Convex (curvilinear) array: a fan-shaped field of view.
    Convex,
}

impl Probe {
    pub fn as_str(self) -> &'static str {
        match self {
            Probe::Linear => "linear",
            Probe::Convex => "convex",
        }
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Probe {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "linear" => Ok(Probe::Linear),
            "convex" | "curvilinear" => Ok(Probe::Convex),
            _ => Err(format!("unknown probe {s:?} (expected linear or convex)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in Diagnosis::ALL {
            assert_eq!(d.as_str().parse::<Diagnosis>().unwrap(), d);
            assert_eq!(Diagnosis::ALL[d.index()], d);
        }
        assert_eq!("Curvilinear".parse::<Probe>().unwrap(), Probe::Convex);
        assert!("phased".parse::<Probe>().is_err());
        assert!("flu".parse::<Diagnosis>().unwrap_err().contains("flu"));
    }
}
