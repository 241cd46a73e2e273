//! What a verified token says about its bearer.

/// Identity claims from a verified token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Claims {
    /// `sub`.
    pub subject: String,
    /// `email` (its ASCII letters lower-cased: `domain::invitations::normalize_email`).
    pub email: String,
    /// `name`.
    pub name: Option<String>,
    /// `email_verified`; a token without the claim does not count as verified (it proves
    /// nothing about the address, so it accepts no invitation).
    pub email_verified: bool,
}
