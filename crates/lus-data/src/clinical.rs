//! Clinical vocabulary shared by every data source: diagnoses and probe geometry.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A diagnosis: the one class enum of lus, for every data source (the scanner's patients, a
/// folder's `labels.csv`, the POCUS file-name prefixes and metadata), so that a class index
/// means the same diagnosis wherever it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Diagnosis {
    /// No lung pathology ("regular" in POCUS).
    Healthy,
    /// COVID-19.
    Covid,
    /// Bacterial pneumonia.
    Pneumonia,
    /// Non-COVID viral pneumonia: in the POCUS data, not among the paper's three classes.
    Viral,
}

impl Diagnosis {
    /// The paper's three classes, in class-index order: the scanner's diagnoses and the
    /// default class list of every classifier.
    pub const PAPER: [Diagnosis; 3] = [Diagnosis::Healthy, Diagnosis::Covid, Diagnosis::Pneumonia];

    /// Every diagnosis, in [`Diagnosis::index`] order.
    pub const ALL: [Diagnosis; 4] = [
        Diagnosis::Healthy,
        Diagnosis::Covid,
        Diagnosis::Pneumonia,
        Diagnosis::Viral,
    ];

    /// The class index in the default class order ([`Diagnosis::PAPER`], then `viral`). A
    /// classifier over another class list (a POCUS config's `classes`) uses the position in
    /// that list instead.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The lower-case name used in files.
    pub fn as_str(self) -> &'static str {
        match self {
            Diagnosis::Healthy => "healthy",
            Diagnosis::Covid => "covid",
            Diagnosis::Pneumonia => "pneumonia",
            Diagnosis::Viral => "viral",
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
                format!("unknown diagnosis {s:?} (expected healthy, covid, pneumonia or viral)")
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
        // The paper's classes are the first indices: a scanner class id and a POCUS class id
        // (default class list) name the same diagnosis.
        assert_eq!(Diagnosis::PAPER, Diagnosis::ALL[..3]);
        assert_eq!("Curvilinear".parse::<Probe>().unwrap(), Probe::Convex);
        assert!("phased".parse::<Probe>().is_err());
        assert!("flu".parse::<Diagnosis>().unwrap_err().contains("flu"));
    }
}
