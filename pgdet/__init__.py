"""pgdet"""
