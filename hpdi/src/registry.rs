//! Devices by name: the application opens `blk0`, `net0`, `nvram0` without knowing which
//! driver or transport is behind it.

use alloc::boxed::Box;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::device::{Device, DeviceKind};
use crate::error::Error;

#[derive(Default)]
pub struct Registry {
    devices: Vec<(String, Box<dyn Device>)>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a device under the next free name of its kind; returns the name.
    pub fn add(&mut self, dev: Box<dyn Device>) -> String {
        let kind = dev.capabilities().kind;
        let n = self
            .devices
            .iter()
            .filter(|(_, d)| d.capabilities().kind == kind)
            .count();
        let name = format!("{}{n}", kind.prefix());
        self.devices.push((name.clone(), dev));
        name
    }

    /// Registers a device under a name of the caller's choosing (a device handed back under
    /// the name it had); refused if the name is taken.
    pub fn insert(&mut self, name: &str, dev: Box<dyn Device>) -> Result<(), Box<dyn Device>> {
        if self.devices.iter().any(|(n, _)| n == name) {
            return Err(dev);
        }
        self.devices.push((String::from(name), dev));
        Ok(())
    }

    pub fn open(&mut self, name: &str) -> Result<&mut dyn Device, Error> {
        self.devices
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.as_mut() as &mut dyn Device)
            .ok_or(Error::NoSuchDevice)
    }

    /// Removes a device, handing it to a service that drives it exclusively.
    pub fn take(&mut self, name: &str) -> Option<Box<dyn Device>> {
        let i = self.devices.iter().position(|(n, _)| n == name)?;
        Some(self.devices.remove(i).1)
    }

    /// Every device of a kind, mutably, by name (to drive several at once).
    pub fn of_kind_mut(
        &mut self,
        kind: DeviceKind,
    ) -> impl Iterator<Item = (&str, &mut dyn Device)> {
        self.devices
            .iter_mut()
            .filter(move |(_, d)| d.capabilities().kind == kind)
            .map(|(n, d)| (n.as_str(), d.as_mut() as &mut dyn Device))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.devices.iter().map(|(n, _)| n.as_str())
    }

    pub fn of_kind(&self, kind: DeviceKind) -> impl Iterator<Item = &str> {
        self.devices
            .iter()
            .filter(move |(_, d)| d.capabilities().kind == kind)
            .map(|(n, _)| n.as_str())
    }
}
