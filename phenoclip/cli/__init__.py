"""Thin typer commands: parse, validate, call one library function. No heavy imports here."""
