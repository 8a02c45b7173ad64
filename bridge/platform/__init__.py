"""The xpander platform: its wire protocol (routes, statuses, shapes) and the HTTP client."""
