//! Talking to other instances. Peer URLs are supplied by users and by peers, so every outbound
//! request goes through [`guard`], the SSRF guard (DESIGN.md §7).

pub mod client;
pub mod guard;
