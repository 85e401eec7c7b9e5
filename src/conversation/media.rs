//! What the engine sends to a call's audio, whatever the carrier: the media streams frame these
//! in their carrier's protocol.

/// What can be sent to a call's audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToCall {
    /// Audio in the stream's encoding, played after what is queued.
    Audio(Vec<u8>),
    /// Reported back (as played) once the audio queued before it has played.
    Mark(String),
    /// Drops the audio queued and not yet played.
    Clear,
}
