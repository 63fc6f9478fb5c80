//! The POCUS taxonomy: the diagnostic class of a file ([`PocusClass`], from its file-name
//! prefix or a `metadata.csv` label) and its media kind ([`Media`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The diagnostic class of a POCUS file, from its file-name prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PocusClass {
    /// `Cov`: COVID-19.
    Covid,
    /// `Pneu`: bacterial pneumonia.
    Pneumonia,
    /// `Reg`: healthy ("regular").
    Healthy,
    /// `Vir`: non-COVID viral pneumonia.
    Viral,
}

impl PocusClass {
    pub const ALL: [PocusClass; 4] = [
        PocusClass::Covid,
        PocusClass::Pneumonia,
        PocusClass::Healthy,
        PocusClass::Viral,
    ];

    /// The lower-case name used in files and configs.
    pub fn as_str(self) -> &'static str {
        match self {
            PocusClass::Covid => "covid",
            PocusClass::Pneumonia => "pneumonia",
            PocusClass::Healthy => "healthy",
            PocusClass::Viral => "viral",
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            PocusClass::Covid => "cov",
            PocusClass::Pneumonia => "pneu",
            PocusClass::Healthy => "reg",
            PocusClass::Viral => "vir",
        }
    }

    /// The class named by a file name's prefix (case-insensitive `Cov`, `Pneu`, `Reg`, `Vir`).
    pub fn from_file_name(name: &str) -> std::result::Result<Self, String> {
        let lower = name.to_ascii_lowercase();
        PocusClass::ALL
            .into_iter()
            .find(|c| lower.starts_with(c.prefix()))
            .ok_or_else(|| {
                format!(
                    "file name {name:?} does not start with a class prefix (Cov, Pneu, Reg, Vir)"
                )
            })
    }

    /// The class that `metadata.csv`'s `label` words name (`COVID-19`, `Bacterial pneumonia`,
    /// `regular`, `Viral pneumonia`), if any.
    pub fn from_metadata_label(label: &str) -> Option<Self> {
        let lower = label.trim().to_ascii_lowercase();
        if lower.starts_with("covid") {
            Some(PocusClass::Covid)
        } else if lower.starts_with("bacterial") || lower == "pneumonia" {
            Some(PocusClass::Pneumonia)
        } else if lower == "regular" || lower == "healthy" {
            Some(PocusClass::Healthy)
        } else if lower.starts_with("viral") {
            Some(PocusClass::Viral)
        } else {
            None
        }
    }
}

impl fmt::Display for PocusClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PocusClass {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        PocusClass::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                format!("unknown POCUS class {s:?} (expected covid, pneumonia, healthy or viral)")
            })
    }
}

/// Still image or clip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Media {
    Video,
    Image,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_from_every_prefix_spelling() {
        for (name, class) in [
            ("Cov-Atlas+(44)", PocusClass::Covid),
            ("cov_combatting_image4", PocusClass::Covid),
            ("Pneu_Avi_Video_001", PocusClass::Pneumonia),
            ("pneu-atlas-pneumonia2", PocusClass::Pneumonia),
            ("Reg_Image_181206_crop", PocusClass::Healthy),
            ("Vir_liftl_H1N1_case2_clip2", PocusClass::Viral),
        ] {
            assert_eq!(PocusClass::from_file_name(name), Ok(class), "{name}");
        }
        let err = PocusClass::from_file_name("Liver_clip").unwrap_err();
        assert!(
            err.contains("Liver_clip") && err.contains("Cov, Pneu, Reg, Vir"),
            "{err}"
        );
        assert_eq!(
            PocusClass::from_metadata_label("Bacterial pneumonia"),
            Some(PocusClass::Pneumonia)
        );
        assert_eq!(
            PocusClass::from_metadata_label("COVID-19"),
            Some(PocusClass::Covid)
        );
        assert_eq!(
            PocusClass::from_metadata_label("regular"),
            Some(PocusClass::Healthy)
        );
        assert_eq!(
            PocusClass::from_metadata_label("Viral pneumonia"),
            Some(PocusClass::Viral)
        );
        assert_eq!(PocusClass::from_metadata_label("unclear"), None);
    }
}
