//! The POCUS taxonomy: the diagnosis of a file (a [`Diagnosis`], from its file-name prefix or
//! a `metadata.csv` label) and its media kind ([`Media`]).

use serde::{Deserialize, Serialize};

use crate::clinical::Diagnosis;

/// The POCUS file names and metadata words for a diagnosis.
impl Diagnosis {
    fn pocus_prefix(self) -> &'static str {
        match self {
            Diagnosis::Covid => "cov",
            Diagnosis::Pneumonia => "pneu",
            Diagnosis::Healthy => "reg",
            Diagnosis::Viral => "vir",
        }
    }

    /// The class named by a POCUS file name's prefix (case-insensitive `Cov`, `Pneu`, `Reg`,
    /// `Vir`).
    pub fn from_pocus_file_name(name: &str) -> std::result::Result<Self, String> {
        let lower = name.to_ascii_lowercase();
        Diagnosis::ALL
            .into_iter()
            .find(|c| lower.starts_with(c.pocus_prefix()))
            .ok_or_else(|| {
                format!(
                    "file name {name:?} does not start with a class prefix (Cov, Pneu, Reg, Vir)"
                )
            })
    }

    /// The class that POCUS `metadata.csv`'s `label` words name (`COVID-19`, `Bacterial
    /// pneumonia`, `regular`, `Viral pneumonia`), if any.
    pub fn from_pocus_metadata_label(label: &str) -> Option<Self> {
        let lower = label.trim().to_ascii_lowercase();
        if lower.starts_with("covid") {
            Some(Diagnosis::Covid)
        } else if lower.starts_with("bacterial") || lower == "pneumonia" {
            Some(Diagnosis::Pneumonia)
        } else if lower == "regular" || lower == "healthy" {
            Some(Diagnosis::Healthy)
        } else if lower.starts_with("viral") {
            Some(Diagnosis::Viral)
        } else {
            None
        }
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
            ("Cov-Atlas+(44)", Diagnosis::Covid),
            ("cov_combatting_image4", Diagnosis::Covid),
            ("Pneu_Avi_Video_001", Diagnosis::Pneumonia),
            ("pneu-atlas-pneumonia2", Diagnosis::Pneumonia),
            ("Reg_Image_181206_crop", Diagnosis::Healthy),
            ("Vir_liftl_H1N1_case2_clip2", Diagnosis::Viral),
        ] {
            assert_eq!(Diagnosis::from_pocus_file_name(name), Ok(class), "{name}");
        }
        let err = Diagnosis::from_pocus_file_name("Liver_clip").unwrap_err();
        assert!(
            err.contains("Liver_clip") && err.contains("Cov, Pneu, Reg, Vir"),
            "{err}"
        );
        assert_eq!(
            Diagnosis::from_pocus_metadata_label("Bacterial pneumonia"),
            Some(Diagnosis::Pneumonia)
        );
        assert_eq!(
            Diagnosis::from_pocus_metadata_label("COVID-19"),
            Some(Diagnosis::Covid)
        );
        assert_eq!(
            Diagnosis::from_pocus_metadata_label("regular"),
            Some(Diagnosis::Healthy)
        );
        assert_eq!(
            Diagnosis::from_pocus_metadata_label("Viral pneumonia"),
            Some(Diagnosis::Viral)
        );
        assert_eq!(Diagnosis::from_pocus_metadata_label("unclear"), None);
    }
}
