"""The sidecar: registry proxy, origin seeder and tracker on each registry host."""
