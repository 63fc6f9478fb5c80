//! criterion benches for lus live in `benches/benches/`.
