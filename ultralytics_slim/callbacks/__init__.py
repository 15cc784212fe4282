"""Ultralytics callbacks the slim trainer registers: per concern a module of plain event functions."""
