"""leafpds's own server-rendered pages (sign-in with outside providers)."""
