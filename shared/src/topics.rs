//! MQTT topic names (DESIGN §4): `{prefix}/v1/devices/{device_id}/{usage|tx|status|down|receipt}`.

use crate::ids::DeviceId;

/// The default topic prefix.
pub const DEFAULT_PREFIX: &str = "rollcall";

/// Which per-device channel a topic names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// Signed usage reports (up, QoS 1).
    Usage,
    /// Signed replenishment transactions (up, QoS 1).
    Tx,
    /// Online/offline and health (up, QoS 1, retained).
    Status,
    /// Acks, receipts, display messages (down, QoS 1).
    Down,
    /// The agent's receipts for display messages (up, QoS 1).
    Receipt,
}

impl Channel {
    fn as_str(self) -> &'static str {
        match self {
            Channel::Usage => "usage",
            Channel::Tx => "tx",
            Channel::Status => "status",
            Channel::Down => "down",
            Channel::Receipt => "receipt",
        }
    }
}

/// Topic names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Default for Topics {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Topics {
    /// Topics under `prefix` (trailing slashes are ignored).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }
    /// The topic of `device`'s `channel`.
    pub fn topic(&self, device: &DeviceId, channel: Channel) -> String {
        format!("{}/v1/devices/{}/{}", self.prefix, device, channel.as_str())
    }
    /// `.../usage` of a device.
    pub fn usage(&self, device: &DeviceId) -> String {
        self.topic(device, Channel::Usage)
    }
    /// `.../tx` of a device.
    pub fn tx(&self, device: &DeviceId) -> String {
        self.topic(device, Channel::Tx)
    }
    /// `.../status` of a device.
    pub fn status(&self, device: &DeviceId) -> String {
        self.topic(device, Channel::Status)
    }
    /// `.../down` of a device.
    pub fn down(&self, device: &DeviceId) -> String {
        self.topic(device, Channel::Down)
    }
    /// `.../receipt` of a device.
    pub fn receipt(&self, device: &DeviceId) -> String {
        self.topic(device, Channel::Receipt)
    }
    /// The subscription filter for one channel of every device (`.../devices/+/usage`).
    pub fn filter(&self, channel: Channel) -> String {
        format!("{}/v1/devices/+/{}", self.prefix, channel.as_str())
    }
    /// Splits a topic into device and channel; `None` if it is not one of ours.
    /// The device id found here is a routing hint: trust comes from the signature.
    pub fn parse(&self, topic: &str) -> Option<(DeviceId, Channel)> {
        let rest = topic
            .strip_prefix(&self.prefix)?
            .strip_prefix("/v1/devices/")?;
        let (dev, chan) = rest.split_once('/')?;
        let channel = match chan {
            "usage" => Channel::Usage,
            "tx" => Channel::Tx,
            "status" => Channel::Status,
            "down" => Channel::Down,
            "receipt" => Channel::Receipt,
            _ => return None,
        };
        Some((DeviceId::parse(dev).ok()?, channel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_design_and_parse_back() {
        let t = Topics::default();
        let d = DeviceId::parse("dev-7").unwrap();
        assert_eq!(t.usage(&d), "rollcall/v1/devices/dev-7/usage");
        assert_eq!(t.down(&d), "rollcall/v1/devices/dev-7/down");
        assert_eq!(t.filter(Channel::Status), "rollcall/v1/devices/+/status");
        assert_eq!(
            t.parse("rollcall/v1/devices/dev-7/tx"),
            Some((d, Channel::Tx))
        );
        assert_eq!(t.parse("rollcall/v1/devices/dev-7/other"), None);
        assert_eq!(t.parse("other/v1/devices/dev-7/usage"), None);
        assert_eq!(t.parse("rollcall/v1/devices/a/b/usage"), None);
    }

    #[test]
    fn custom_prefixes_work() {
        let t = Topics::new("acme/");
        assert_eq!(
            t.usage(&DeviceId::parse("d").unwrap()),
            "acme/v1/devices/d/usage"
        );
    }
}
