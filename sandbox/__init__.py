"""Local stand-ins for the outside world (never deployed): a Microsoft Entra tenant and a Graph emulator."""
