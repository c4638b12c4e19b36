"""Op families and the autograd Functions that give them their relevance backward."""
