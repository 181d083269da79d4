//! Invitation mails, sent through SMTP (the `lettre` crate) when `mail.smtp_url` is set, e.g.
//! `smtp://127.0.0.1:2525` (plain), `smtps://user:pass@mail.example.net` (TLS). A member whose
//! mail went out becomes `pending`; without SMTP, or when sending fails, it stays
//! `mail-not-sent` and its link is still shown to the owner (`hearth sharings invitations`).

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use crate::config::MailConfig;

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("invalid mail configuration: {0}")]
    Config(String),
    #[error("invalid address: {0}")]
    Address(String),
    #[error("the SMTP server refused or failed: {0}")]
    Send(String),
}

pub struct Invitation<'a> {
    pub to: &'a str,
    pub owner: &'a str,
    pub description: &'a str,
    pub link: &'a str,
}

/// Sends one invitation. Errors never contain the link (it carries the member's secret state).
pub async fn send_invitation(config: &MailConfig, inv: &Invitation<'_>) -> Result<(), MailError> {
    let url = config.smtp_url.as_ref().ok_or_else(|| MailError::Config("mail.smtp_url is not set".into()))?;
    let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
        .map_err(|_| MailError::Config("mail.smtp_url is not a valid SMTP URL".into()))?
        .timeout(Some(Duration::from_secs(15)))
        .build();
    let from = config.from.clone().unwrap_or_else(|| "hearth <noreply@localhost>".into());
    let text = format!(
        "{owner} wants to share \u{201c}{desc}\u{201d} with you.\n\n\
         Open this link to accept or refuse:\n{link}\n\n\
         The link is personal: do not forward it.\n",
        owner = inv.owner,
        desc = inv.description,
        link = inv.link
    );
    let message = Message::builder()
        .from(from.parse().map_err(|_| MailError::Address("mail.from".into()))?)
        .to(inv.to.parse().map_err(|_| MailError::Address(inv.to.to_owned()))?)
        .subject(format!("{} shares documents with you", inv.owner))
        .header(ContentType::TEXT_PLAIN)
        .body(text)
        .map_err(|e| MailError::Config(e.to_string()))?;
    transport.send(message).await.map_err(|e| MailError::Send(e.to_string()))?;
    Ok(())
}
